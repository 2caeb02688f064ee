"""Encoders, heads and SSL objectives. Pure modelling code: no I/O."""
