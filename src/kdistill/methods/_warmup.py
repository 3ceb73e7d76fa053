"""A term whose weight rises linearly over the first epochs (DKD's and ReviewKD's warm-up)."""

from typing import ClassVar


class LinearWarmup:
    """Mixin for a Distiller whose `warmup_term` is weighted `min(epoch / options.warmup, 1)` times
    its usual weight (epoch counted from 1, as mdistiller's `kwargs["epoch"]`; `warmup` 0: none).
    The factor is part of the term's weight, so the logged term is the unscaled loss."""

    warmup_term: ClassVar[str]

    def warmup_factor(self) -> float:
        warmup = self.options.warmup
        return min(self.epoch / warmup, 1.0) if warmup > 0 else 1.0

    def loss_weight(self, term: str) -> float:
        weight = super().loss_weight(term)
        return weight * self.warmup_factor() if term == self.warmup_term else weight
