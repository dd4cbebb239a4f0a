"""Render a portrait animation: python tools/render.py REFERENCE [options].

The same command as the ``factorportrait-render`` console script (factorportrait/cli/render.py).
"""

import sys

from factorportrait.cli.render import main

if __name__ == "__main__":
    sys.exit(main())
