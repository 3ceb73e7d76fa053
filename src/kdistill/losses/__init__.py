"""Functional forms of every distillation loss, in the style of torch.nn.functional.

Convention: student first, teacher second; the teacher's tensors carry no gradient. Each
function documents its reduction, which is the one the published weights were tuned for.
One module per family keeps each readable; everything is importable from `kdistill.losses`.
"""

from kdistill.losses.contrastive import *  # noqa: F403
from kdistill.losses.contrastive import __all__ as _contrastive
from kdistill.losses.logit import *  # noqa: F403
from kdistill.losses.logit import __all__ as _logit

__all__ = [*_logit, *_contrastive]
