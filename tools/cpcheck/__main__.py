import sys

from tools.cpcheck import main

sys.exit(main())
