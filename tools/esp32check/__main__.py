import sys

from tools.esp32check import main

sys.exit(main())
