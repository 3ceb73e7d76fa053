"""Vanilla training: cross-entropy on the labels only (teachers and the tables' baseline students)."""

from kdistill.methods.base import Distiller
from kdistill.methods.registry import register_method


@register_method("vanilla")
class Vanilla(Distiller):
    paper = "none: cross-entropy on the labels alone, the baseline of every table"
    needs_teacher = False
