"""Functional forms of every distillation loss, in the style of torch.nn.functional.

Convention: student first, teacher second; the teacher's tensors carry no gradient. Each
function documents its reduction, which is the one the published weights were tuned for.
One module per family keeps each readable; everything is importable from `kdistill.losses`.
"""

from kdistill.losses import contrastive, feature, label_free, logit
from kdistill.losses.contrastive import *  # noqa: F403
from kdistill.losses.feature import *  # noqa: F403
from kdistill.losses.label_free import *  # noqa: F403
from kdistill.losses.logit import *  # noqa: F403

__all__ = [*logit.__all__, *contrastive.__all__, *feature.__all__, *label_free.__all__]
