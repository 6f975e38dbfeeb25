"""Next-turn repair: score warm rows with the next turn's signal, select K, promote them."""
