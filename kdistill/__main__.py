import sys

from kdistill.commands.cli import main

sys.exit(main())
