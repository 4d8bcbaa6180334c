"""The pipeline's steps, one module each: what `pneumocam COMMAND` runs, callable from Python too.

A step reads files, calls the library (the modules beside this package) and writes its outputs and report.
Steps never import each other's internals; the library never imports a step.
"""
