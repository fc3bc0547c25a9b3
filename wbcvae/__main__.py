from wbcvae.cli.main import main

raise SystemExit(main())
