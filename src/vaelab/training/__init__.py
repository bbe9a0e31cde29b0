"""Training: the loop, one optimisation step, learning-rate schedules and the weights' moving
average, TensorBoard; under torchrun the same step on several processes.

May import: base, data, models, runs.

One step, from the loop down to the math (B images, L latent dims, k samples per image)::

    loop.train_epoch     for each batch x (B, C, H, W) of data.splits.Split.batches,
                         beta = kl_weight(epoch, step) (the KL warm-up), then
    step.Stepper         zero the gradients; loss, sums = net(x, y, beta); loss.backward();
                         clip the gradients' norm (if asked); Adam(W).step(); the weights'
                         moving average follows (schedule.WeightAverage)
      net = step.Loss    the unit DDP wraps and torch.compile compiles: bf16 autocast if asked,
                         loss = objectives.elbo(model, x, k, beta, ...), and
                         sums = [loss * B, sum ELBO, sum recon, sum KL] for the epoch's metrics
        objectives.elbo  q = model.encode(x)                   q(z|x): batch (B,), event (L,)
                         z = q.rsample((k,))                   (k, B, L), z = mu + sigma * eps
                         log p(x|z) = model.decode(z).log_prob(x)      (k, B)
                         KL(q || p(z)), analytic or Monte Carlo        (B,)
                         loss = -mean_B(mean_k log p(x|z) - beta * KL)  a scalar, nats per image
"""
