"""pkd/data"""
