"""Adversarial knowledge distillation: DGAD and the methods it is compared with."""
