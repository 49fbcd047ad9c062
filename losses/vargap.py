"""Feature-statistics alignment for VarGap (docs/methods.md section 4).

APPROXIMATE: the design follows only the abstract of Dong et al., "Adversarially Robust
Distillation by Reducing the Student-Teacher Variance Gap" (ECCV 2024); the authors' exact
losses are unknown to us. Features are the penultimate, globally pooled activations (N, d)."""
from typing import Dict

import torch
import torch.nn.functional as F


def batch_covariance(features: torch.Tensor) -> torch.Tensor:
    """(d, d) covariance over the batch: centred, divided by N - 1 (by 1 for a single sample)."""
    centred = features - features.mean(0, keepdim=True)
    return centred.T @ centred / max(features.shape[0] - 1, 1)


def covariance_alignment(student_projected: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """||Cov(P f_S) - Cov(f_T)||_F^2 / d_T^2; the student's features already projected to d_T."""
    difference = batch_covariance(student_projected) - batch_covariance(teacher.detach())
    return difference.pow(2).sum() / teacher.shape[1] ** 2


def gram_alignment(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """||G_S - G_T||_F^2 / N^2 with G = F F^T over row-L2-normalised features (N x N: no projector)."""
    s, t = F.normalize(student, dim=1), F.normalize(teacher.detach(), dim=1)
    return (s @ s.T - t @ t.T).pow(2).sum() / student.shape[0] ** 2


def variance_gap_terms(projected_clean: torch.Tensor, projected_adv: torch.Tensor, s_clean: torch.Tensor,
                       s_adv: torch.Tensor, t_clean: torch.Tensor, t_adv: torch.Tensor,
                       cov_weight: float, gram_weight: float) -> Dict[str, torch.Tensor]:
    """cov_weight * L_cov + gram_weight * L_gram, each summed over the clean and the adversarial batch,
    with parts 'cov' and 'gram' (unweighted; 0 when the weight is 0, and then not computed).

    projected_*: the student's features through the projector P; s_*, t_*: raw student and
    teacher features."""
    cov = gram = projected_clean.new_zeros(())
    if cov_weight:
        cov = covariance_alignment(projected_adv, t_adv) + covariance_alignment(projected_clean, t_clean)
    if gram_weight:
        gram = gram_alignment(s_adv, t_adv) + gram_alignment(s_clean, t_clean)
    return {"loss": cov_weight * cov + gram_weight * gram, "cov": cov, "gram": gram}


def variance_gap_alignment(*args, **kwargs) -> torch.Tensor:
    return variance_gap_terms(*args, **kwargs)["loss"]
