from attnrewrite.cli import main

raise SystemExit(main())
