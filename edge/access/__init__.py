"""edge.access"""
