"""edge.http"""
