"""Production stations: the claim/produce loop and the device drivers it runs."""
