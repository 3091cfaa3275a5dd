"""Set-up shared by the Python tests."""
import signal

# The Ctrl-C tests send SIGINT to child programs, as a terminal sends it to its foreground job.
# A process started in the background by a shell without job control (`cmd &` in a script,
# `nohup`) has SIGINT ignored, exec keeps it ignored, and CPython then installs no handler of
# its own: such a child would never see the Ctrl-C. A handler is reset to the default by exec,
# so with one here the children start as a terminal's programs do.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
