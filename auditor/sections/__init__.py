"""Section builders: each turns a technique's results (auditor.techniques) into a report Section.

The Technique classes that call them are declared in auditor.declarations, which stays light to import.
"""
