"""PTX generators: one module per kernel family."""
