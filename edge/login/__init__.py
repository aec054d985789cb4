"""edge.login"""
