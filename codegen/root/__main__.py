from gradsmith.codegen.cli import main

raise SystemExit(main())
