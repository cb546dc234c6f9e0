"""Allow `python -m streamvec` as a synonym of the `streamvec` command."""

import sys

from streamvec.commands import main

sys.exit(main())
