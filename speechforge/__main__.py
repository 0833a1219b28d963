import sys

from speechforge.cli import main

sys.exit(main())
