"""Certificates for terminated routes: a live store and the sources that fill it."""
