"""hepdeploy.convert"""
