"""``python -m fairdefense.cli``: the same as the ``fairdefense`` command."""
import sys

from fairdefense.cli import main

sys.exit(main())
