"""``python -m fairdefense``: the ``fairdefense`` command (also under ``torchrun -m fairdefense``)."""
import sys

from fairdefense.cli import main

sys.exit(main())
