"""hepdeploy.validate"""
