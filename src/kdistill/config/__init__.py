"""The run configuration: its typed schema (`schema`, re-exported here), the YAML reader
(`yaml_file`), the loader that resolves a file and overrides into a frozen run (`loading`) and the
listing of every key with its default and explanation (`reference`, `kdistill config`).

Only the schema is imported here: `loading` resolves the method section with the method registry,
which sits above the data layer that imports the schema.
"""

from kdistill.config.schema import *  # noqa: F403
from kdistill.config.schema import __all__  # noqa: F401
