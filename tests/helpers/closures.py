"""Closures the optimizer tests share."""

from torch import nn


def mse_closure(model, opt, x, y):
    """The usual closure: zero the gradients, forward, mean squared error, backward; returns the loss."""

    def closure():
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    return closure
