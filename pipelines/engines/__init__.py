"""Engines that map the stage graph over work units: local, Apache Beam, Ray."""
