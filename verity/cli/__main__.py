from verity.cli.main import app

app()
