"""hepdeploy.optimize"""
