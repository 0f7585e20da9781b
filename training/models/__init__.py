"""The models and what they train with: the image models MCC, MLC and HER on a common base
(``base``, ``backbone``), LocSens with its negatives and sigma schedule (``locsens``,
``negatives``, ``sigma``), and learning-rate schedules (``lr``). Pure modules: no file I/O.
See docs/architecture.md.
"""
