"""Shared pieces of the distillation losses. Every KL takes the teacher (the target) first."""
import torch
import torch.nn.functional as F


def kl_rows(target_logits: torch.Tensor, logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Per-sample KL(softmax(target/T) || softmax(logits/T)), shape (N,)."""
    return F.kl_div(F.log_softmax(logits / temperature, dim=1), F.softmax(target_logits / temperature, dim=1),
                    reduction="none").sum(1)


def kl_mean_entries(target_logits: torch.Tensor, logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL summed over everything and divided by N*C (PyTorch's reduction='mean', as ARD/RSLAD/AdaAD use)."""
    return kl_rows(target_logits, logits, temperature).sum() / logits.numel()


def kl_entries_eps(target_logits: torch.Tensor, logits: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """The KL of the MTARD, Fair-ARD and ABSLD code, entry by entry: p (log(p + eps) - log q), p = softmax(target),
    q = softmax(logits), shape (N, C) (the eps keeps log p finite; it is a constant for the student)."""
    p = F.softmax(target_logits.detach(), dim=1)
    return p * (torch.log(p + eps) - F.log_softmax(logits, dim=1))


def kl_batchmean(target_logits: torch.Tensor, logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL summed over classes, averaged over samples."""
    return kl_rows(target_logits, logits, temperature).mean()


def swap_columns(logits: torch.Tensor, a: torch.Tensor, b: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Exchange entries a_i and b_i of each row i where rows_i is True; other rows unchanged."""
    a, b = a[:, None], b[:, None]
    value_a, value_b = logits.gather(1, a), logits.gather(1, b)
    swapped = logits.scatter(1, a, value_b).scatter(1, b, value_a)
    return torch.where(rows[:, None], swapped, logits)
