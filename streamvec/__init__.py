"""streamvec: the command line and the settings that every component reads."""

__version__ = "0.1.0"
