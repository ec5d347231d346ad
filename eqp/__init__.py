"""Equilibrium propagation on layered networks with layer-skipping connections.

A faithful and fast rebuild of Gammell, Buckley, Nam & McCaughan (2021); see README.md.
"""
