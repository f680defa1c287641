from chartbridge.cli import console

console()
