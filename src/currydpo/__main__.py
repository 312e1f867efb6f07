from currydpo.cli import main
import sys
sys.exit(main())
