"""Federation: Paillier statistics and Flower training (later issues)."""
