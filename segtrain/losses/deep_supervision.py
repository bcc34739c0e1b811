"""Deep supervision: apply a loss to every output head with decaying weights, as nnU-Net does.

MONAI's ``monai.losses.DeepSupervisionLoss`` does the same sum, but takes the main output first,
clamps its weights at 1/16 without normalising them, and passes no label maps to the loss; ours reads
UNet++'s heads main-last, normalises the weights to sum 1 (nnU-Net's) and downsamples the label maps
with the labels. It is the one object the training module talks to: it forwards the epoch hook, the
label maps and the divergence hints of the loss it wraps.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from segtrain.losses.base import SegmentationLoss


def output_heads(outputs: Tensor | Sequence[Tensor], target_ndim: int) -> list[Tensor]:
    """A network's training output as its heads, the main output first.

    - one tensor (B, C, *S): one head;
    - MONAI ``DynUNet`` with deep supervision, in training: one tensor (B, heads, C, *S), main first,
      every head already upsampled to the output size (one dimension more than the labels (B, 1, *S));
    - MONAI ``BasicUNetPlusPlus``: a list, shallow heads first, the main (deepest) output last.
    """
    if isinstance(outputs, Tensor):
        return list(outputs.unbind(1)) if outputs.ndim == target_ndim + 1 else [outputs]
    return list(outputs)[::-1]


class DeepSupervisionLoss(nn.Module):
    """Σ_i w_i·loss(output_i, target), w_i ∝ 1/2^i normalised to sum 1, i = 0 for the main output (nnU-Net's weights).

    The heads come from ``output_heads`` (DynUNet's stacked heads, UNet++'s list). Heads of lower
    resolution are compared with a nearest-neighbour downsampled label map.
    """

    def __init__(self, loss: SegmentationLoss):
        super().__init__()
        self.loss = loss

    @staticmethod
    def weights(num_outputs: int) -> list[float]:
        raw = [0.5**i for i in range(num_outputs)]
        total = sum(raw)
        return [w / total for w in raw]

    @property
    def label_maps(self) -> dict:
        return self.loss.label_maps

    def on_epoch_start(self, epoch: int) -> dict[str, float]:
        return self.loss.on_epoch_start(epoch)

    def hints(self) -> list[str]:
        return self.loss.hints()

    def forward(self, outputs: Tensor | Sequence[Tensor], target: Tensor, **maps: Tensor) -> Tensor:
        heads = output_heads(outputs, target.ndim)  # the module's labels: (B, 1, *S)
        if len(heads) == 1:
            return self.loss(heads[0], target, **maps)
        total = 0.0
        for weight, head in zip(self.weights(len(heads)), heads):
            t, m = target, maps
            if tuple(head.shape[2:]) != tuple(target.shape[-(head.ndim - 2):]):
                t = target if target.ndim == head.ndim else target.unsqueeze(1)
                t = F.interpolate(t.float(), size=head.shape[2:], mode="nearest").long()
                m = {k: F.interpolate(v.float(), size=head.shape[2:], mode="nearest") for k, v in maps.items()}
            total = total + weight * self.loss(head, t, **m)
        return total
