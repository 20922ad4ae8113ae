"""Qt-free helpers of the VMambaX Train module (importable under slicer-core).

``logic``: case export, the ``vmambax train`` background process and its progress stream, model
registration; ``chart``: the loss / validation-Dice Plots chart fed from progress events.
"""
