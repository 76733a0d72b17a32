"""One function per step of the data path: each opens its (nested) run, tags its kind, calls the
science, logs params, metrics and artifacts, and returns what it made. Entry points parse their
arguments and call one stage; `study` is a list of calls to the others."""
