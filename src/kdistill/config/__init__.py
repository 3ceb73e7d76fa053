"""The run configuration: its typed schema (`schema`, re-exported here), the YAML reader
(`yaml_file`) and the loader that resolves a file and overrides into a frozen run (`loading`).

Only the schema is imported here: `loading` resolves the method section with the method registry,
which sits above the data layer that imports the schema.
"""

from kdistill.config.schema import *  # noqa: F403
from kdistill.config.schema import __all__  # noqa: F401
