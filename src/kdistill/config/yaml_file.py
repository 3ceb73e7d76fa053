"""Reading a YAML config file: a mapping of plain values, or one line that says what is wrong."""

import io
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf

from kdistill.errors import KdistillError, first_line

PYTHON_TAG = "tag:yaml.org,2002:python/"


def _yaml_problem(error: yaml.YAMLError, text: str) -> str:
    """Where in the file and what: 'line L, column C: problem'."""
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        where = f"line {error.problem_mark.line + 1}, column {error.problem_mark.column + 1}"
        problem = error.problem or first_line(error)
        if PYTHON_TAG in problem:
            tag = problem[problem.index(PYTHON_TAG):].rstrip("'").replace("tag:yaml.org,2002:", "!!")
            problem = f"the tag {tag} would build a Python object; a config holds plain values only: remove it"
        elif error.context and error.context_mark is not None:
            mark = error.context_mark
            problem += f" ({error.context} at line {mark.line + 1}, column {mark.column + 1})"
        return f"{where}: {problem}"
    if isinstance(error, yaml.reader.ReaderError):
        return f"line {text[: error.position].count(chr(10)) + 1}: {first_line(error)}"
    return first_line(error)


def read_yaml_mapping(path: str | Path) -> dict:
    """The mapping at the top of a YAML file (an empty file gives {}), read with OmegaConf's
    loader, which is PyYAML's safe loader (no tag builds a Python object) plus YAML 1.2 floats
    such as 1e-3. Raises KdistillError naming the file (and the line) when it cannot be read,
    is not UTF-8, is not YAML, or holds something other than a mapping."""
    try:
        raw = Path(path).read_bytes()
    except OSError as error:
        raise KdistillError(f"cannot read config file '{path}' ({error.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise KdistillError(
            f"config file '{path}' is not UTF-8 text (byte 0x{raw[error.start]:02x} on line {line}); save it as UTF-8"
        ) from None
    try:
        loaded = OmegaConf.load(io.StringIO(text))
    except yaml.YAMLError as error:
        raise KdistillError(f"config file '{path}' is not valid YAML: {_yaml_problem(error, text)}") from None
    except OSError:  # OmegaConf's words for a file that holds a single number or boolean
        loaded = None
    if not isinstance(loaded, DictConfig):
        kind = "a list" if loaded is not None else "a single value"
        raise KdistillError(
            f"config file '{path}' holds {kind}, not a mapping of keys; write one key per line, e.g. 'epochs: 10'"
        )
    return OmegaConf.to_container(loaded)
