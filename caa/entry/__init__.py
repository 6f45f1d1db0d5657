"""Entry points run by AWS rather than by a person: the Lambda handler and the KCL processor.

Each builds :class:`~caa.settings.Settings` from the environment at a cold start and wires
it (:mod:`caa.wiring`) into an adapter of ``consumers.sources``, which takes plain objects.
"""
