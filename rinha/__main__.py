import sys

from rinha.cli import main

sys.exit(main())
