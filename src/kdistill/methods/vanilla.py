"""Vanilla training: cross-entropy on the labels only (teachers and the tables' baseline students)."""

from kdistill.methods import METHODS
from kdistill.methods.base import Distiller


@METHODS.register("vanilla")
class Vanilla(Distiller):
    needs_teacher = False
