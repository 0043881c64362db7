"""The clinician what-if dashboard: a Streamlit app over a trained model.

- :mod:`vpatient.dashboard.app`: the Streamlit script (``vpatient dashboard`` serves it;
  ``streamlit run`` on its file does too); it only draws.
- :mod:`vpatient.dashboard.session`: the model served, request objects, uploads and a cache of results.
- :mod:`vpatient.dashboard.tables`: what the app shows, as DataFrames and plain words.
- :mod:`vpatient.dashboard.charts`: the interactive charts of a forecast and a what-if (Vega-Lite specifications).
- :mod:`vpatient.dashboard.command`: the ``vpatient dashboard`` command.
- :mod:`vpatient.dashboard.browser`: the dashboard served on localhost for a real browser (its browser test, the
  screenshots of ``scripts/dashboard_screenshots.py``).

Only the app imports Streamlit (``pip install 'vpatient[dashboard]'``).
"""
