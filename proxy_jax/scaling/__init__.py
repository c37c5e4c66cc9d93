"""Scaling-law analysis of compute-matched sweeps: laws, compute matching, the sweep report.

``fit`` fits ``L(C) = E + A C^-alpha`` and ``L(N, D) = E + A N^-a + B D^-b`` (Huber loss on log
residuals, many starts) with bootstrap intervals and curve crossovers; ``compute`` turns a FLOP budget
into a step count so that every method trains on the same compute; ``seeds`` averages a sweep's runs
over seeds (mean, spread, the frontier by seed mean); ``report`` renders a sweep's runs,
fits and plots into a markdown report; none of these imports the training loop. ``sweep`` runs
the sweeps and so calls the loop. Import the submodule you need (``from proxy_jax.scaling import fit``).
"""
