"""Errors that the CLI reports as one clear line (exit code 2) instead of a traceback."""


class Persona4RecError(Exception):
    """Base class: a problem the user can fix, described in words."""


class ConfigError(Persona4RecError):
    """The configuration is invalid: the message names the key and the layer that set it."""


class DatasetError(Persona4RecError):
    """A dataset file is missing, cannot be downloaded, or fails its checksum."""


class SchemaError(Persona4RecError):
    """A table crossing a stage boundary does not match its written-down schema."""


class StageUnavailable(Persona4RecError):
    """A pipeline stage that has not been built yet."""


class WorkerLost(Persona4RecError):
    """A worker died mid-stage (out of memory, killed). Finished work is saved; the same command resumes."""
