"""Model kinds behind one interface; `registry` maps a kind name to its params and builder."""
